"""Data readers and generators for the applications.

Submodules are imported on demand (no heavy imports here):

* :mod:`fhcnn.data.images` -- image sets for the autoencoder: scikit-learn digits, the
  scikit-image LFW subset, MNIST IDX files, folders of images.
* :mod:`fhcnn.data.video` -- video and mask readers for segmentation.
* :mod:`fhcnn.data.hyperspectral` -- hyperspectral readers for change detection.
* :mod:`fhcnn.data.volumes` -- 3D volumes (NIfTI, TIFF, zarr, HDF5, SEG-Y, ``.npy``) read by
  window, label checks and summaries, predictions written back with their geometry.
"""
