"""Activities: all I/O of the product, one module per outside system."""
