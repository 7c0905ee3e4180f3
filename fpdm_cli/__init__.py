"""`fpdm`, the command line of FPDM Catalog: parses arguments, calls model_core and pipeline,
prints results. One module per kind of work (catalog runs, single photos, training, models)
registers its commands (see main.COMMAND_MODULES); options they share are in arguments.py."""
