"""Weight conversion between the released PyTorch checkpoints and jukebox-flax model directories.

The only part of the project that imports torch. Installed as ``jukebox_flax_convert``.

    from jukebox_flax_convert import convert, export
    convert("5b_lyrics/", "jukebox-5b-lyrics/", dtype="bfloat16")    # official files or HF checkpoint
    export("my-finetuned-prior/", "prior_level_2.pth.tar")          # back to the official format

Modules: ``sources`` (reading files, memory-mapped), ``hf_keys`` (HF <-> original names),
``vqvae_keys`` / ``prior_keys`` / ``transformer_keys`` (original names <-> our params trees),
``hps`` / ``hf_config`` (the original hyperparameters / a HF ``config.json`` <-> our configs),
``vocab_files`` (the released id lists and HF tokenizer files), ``convert`` and ``export``
(orchestration), ``cli`` (the two subcommands).
"""

from jukebox_flax.errors import ConvertError

from .convert import convert
from .export import export

__all__ = ["convert", "export", "ConvertError"]
