"""``python -m bvit_edge`` runs the CLI (also what ``torchrun -m bvit_edge train ...`` uses)."""

from bvit_edge.cli import main

if __name__ == "__main__":
    main()
