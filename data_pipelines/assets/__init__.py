"""Assets shipped with data_pipelines (text corpora) and the scripts that rebuild them."""
