"""transformers' ``ViTMAEForPreTraining`` folders as a whole MAE (encoder and decoder), read and written.

``vitkit.load(folder)`` of the same folder gives the encoder alone, a plain vitkit model (the decoder's keys
are listed in ``load_info["ignored_keys"]``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..ssl.mae import MAE
from ..utils.jsonfile import read_json
from .build import build_model, cast_state
from .convert_hf import config_from_hf
from .convert_hf_mae import hf_mae_to_vitkit, mae_settings_from_hf, sincos_deviation, vitkit_mae_to_hf
from .hf_format import folder_preprocess, read_folder_weights, write_hf_folder
from .options import LoadOptions

SINCOS_TOLERANCE = 1e-4  # a stored decoder position embedding further than this from MAE's sin-cos is noted


def read_hf_mae(folder: str | os.PathLike, map_location: str = "cpu") -> MAE:
    """The MAE of a transformers ``ViTMAEForPreTraining`` folder (config.json + weights), in eval mode.

    ``mae.encoder`` is what ``vitkit.load(folder)`` gives (preprocessing, ``load_info``); as in transformers,
    its position embedding (MAE's fixed sin-cos) is frozen (``requires_grad=False``), and the decoder's is a
    buffer holding the file's values. ``mae.load_info`` says what was read, with a note when the stored
    decoder positions are not MAE's sin-cos (transformers 5 leaves a fresh model's at zero)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json; a transformers ViTMAEForPreTraining folder has one")
    hf_cfg = read_json(folder / "config.json")
    name = str(folder / "config.json")
    config_from_hf(hf_cfg, name)  # refuse bad configs before reading any weights
    mae_settings_from_hf(hf_cfg, name)
    state, file = read_folder_weights(folder)
    enc_cfg, enc_state, settings, dec_state = hf_mae_to_vitkit(state, hf_cfg, str(file))
    opts = LoadOptions(map_location=map_location)
    pre, source = folder_preprocess(folder, hf_cfg, enc_cfg, opts)
    info = dict(format="hf", source=str(folder), weights=str(file), model_type="vit_mae", ignored_keys=[],
                preprocess_source=source)
    encoder = build_model(enc_cfg, enc_state, pre, info, opts)
    if encoder.pos_embed is not None:
        encoder.pos_embed.requires_grad_(False)  # fixed sin-cos in MAE and transformers (requires_grad=False)
    with torch.random.fork_rng(devices=[]):  # the decoder's fresh initialisation is overwritten: leave the RNG be
        mae = MAE(encoder, **settings)
    dec_state = cast_state(dec_state, opts.dtype, str(file), opts)
    result = mae.load_state_dict(dec_state, strict=False)
    if result.unexpected_keys or any(not k.startswith("encoder.") for k in result.missing_keys):
        raise RuntimeError(f"vitkit bug: the converted decoder does not fit: {result}")
    notes = []
    dev = sincos_deviation(mae.decoder_pos_embed, encoder.patch_embed.grid_size, mae.num_prefix_tokens)
    if dev > SINCOS_TOLERANCE:
        notes.append(f"{file}: decoder.decoder_pos_embed is not MAE's sin-cos (max difference {dev:.3g}); kept as "
                     "stored")
    mae.load_info = dict(format="hf-mae", source=str(folder), weights=str(file), settings=settings, notes=notes)
    return mae.to(map_location).eval()


def write_hf_mae(mae: MAE, folder: str | os.PathLike) -> Path:
    """Write ``mae`` as a folder ``transformers.ViTMAEForPreTraining.from_pretrained`` loads (safetensors,
    config.json with model_type ``vit_mae``; ``preprocessor_config.json`` when the encoder has a preprocessing).
    Raises ValueError, before writing anything, for what transformers' ViTMAE cannot express."""
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder; a Hugging Face checkpoint is a folder")
    state, hf_cfg = vitkit_mae_to_hf(mae)
    return write_hf_folder(out, state, hf_cfg, mae.encoder.preprocess_cfg)
