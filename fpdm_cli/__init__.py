"""`fpdm`, the command line of FPDM Catalog: parses arguments, calls model_core (and later
pipeline), prints results. Each module registers its own subcommands (see main.COMMAND_MODULES)."""
