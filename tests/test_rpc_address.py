"""One rule for a board's address (--rpc, --tracker, bench(rpc=...)): "HOST:PORT" or (host, port); the host is
what stands before the last colon and is not empty, the port a whole number from 1 to 65535."""

from __future__ import annotations

import pytest

from bvit_edge.errors import UsageError
from bvit_edge.runtime.rpc_address import format_address, parse_address


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9090", ("127.0.0.1", 9090)),
        ("board.local:1", ("board.local", 1)),
        ("::1:65535", ("::1", 65535)),
        (("10.0.0.2", 9190), ("10.0.0.2", 9190)),
        (["pi", "9091"], ("pi", 9091)),
    ],
)
def test_an_address_reads_as_host_and_port(value, expected):
    assert parse_address(value) == expected
    assert parse_address(format_address(*expected)) == expected


@pytest.mark.parametrize("value", ["no-port-here", ":9090", "host:", "host:port", "host:0", "host:65536", 9090, None])
def test_a_bad_address_is_a_usage_error_naming_the_option(value):
    with pytest.raises(UsageError, match=r"--tracker must be HOST:PORT"):
        parse_address(value, "--tracker")
