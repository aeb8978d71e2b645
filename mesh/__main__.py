"""``python -m mesh`` runs the command line interface."""

from mesh.cli import main

if __name__ == "__main__":
    main()
