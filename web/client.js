// placeholder: the browser client module
