"""Command-line interface: `fairstamp COMMAND --help` documents every command."""
