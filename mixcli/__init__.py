"""mixcli: a command-line experiment runner for mixup methods."""
__version__ = "0.1.0"
