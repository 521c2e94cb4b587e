"""The hierarchical VQ-VAE: ``encdec`` (conv nets), ``bottleneck`` (VQ + EMA codebooks),
``vqvae`` (the Linen module), ``losses``, ``train``, ``chunked`` (long audio) and ``api``
(``load_vqvae`` / ``VQVAE``; imported lazily by ``jukebox_flax``)."""
