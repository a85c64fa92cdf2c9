"""Lightning shell over the core: callbacks, modules, data modules."""
