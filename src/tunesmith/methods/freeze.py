"""Layer freezing: train only the top-k transformer blocks, the final norm and the output head."""
from __future__ import annotations

from .base import block_index as _block_index
from .full import Full


class Freeze(Full):
    name = "freeze"

    def apply(self, model, cfg, calibration=None):
        n_layers = 1 + max((i for n, _ in model.named_parameters() if (i := _block_index(n)) is not None),
                           default=-1)
        first_trained = max(n_layers - cfg.top_k_layers, 0)
        head = model.get_output_embeddings()
        head_params = {id(p) for p in head.parameters()} if head is not None else set()
        tied = getattr(model.config, "tie_word_embeddings", False)
        for name, p in model.named_parameters():
            idx = _block_index(name)
            if idx is not None:
                train = idx >= first_trained
            else:
                # final norm and head train; with tied embeddings the head IS the input embedding,
                # so it stays frozen (training it would also change every input token's embedding)
                train = ("norm" in name and "layers" not in name) or (id(p) in head_params and not tied)
            p.requires_grad_(train)
        return model
