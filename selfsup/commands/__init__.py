"""The command-line commands beyond training, one module per topic; ``selfsup.cli`` registers them on its app."""
