"""The applications, one package each, on the dense engine (:mod:`fhcnn.engine`) and the
trainer (:mod:`fhcnn.training`): ``segment`` (video), ``change`` (hyperspectral change
detection) and ``vae`` (the hyperbolic autoencoder). Each has ``config``, ``pipeline`` and
``outputs`` modules; the command line (:mod:`fhcnn.cli`) only parses and prints."""
