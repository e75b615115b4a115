"""Built-in attnbench plugins, registered through the ``attnbench`` entry-point group."""
