"""The ``dscbatch`` command line."""
