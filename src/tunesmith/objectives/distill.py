"""Knowledge distillation: a smaller student learns from a frozen teacher's softened logits and hidden states."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.formats import label_set
from ..data.tokenize import IGNORE
from ..errors import TunesmithError
from ..fsutil import atomic_write_json
from .sft import LossOutput, SFTObjective, core_model, is_prompt_learning

PROJECTION = "kd_projection"                     # submodule name on the student's core model
PROJECTION_FILE = "distill_projection.safetensors"
THROUGHPUT_PROMPTS = 32                          # prompts timed per model for tokens/s


# ---- student construction ---------------------------------------------------------------------

def kept_layers(n_layers: int) -> list[int]:
    """Teacher blocks a `half` student keeps: every other block counted from the top, so the last
    block (the one the final norm and head were trained on) is always kept. Even depth keeps the
    odd blocks 1, 3, ..., n-1 (student block i = teacher block 2i+1); odd depth keeps 0, 2, ..., n-1."""
    return [i for i in range(n_layers) if (n_layers - 1 - i) % 2 == 0]


def uniform_layer_map(n_teacher: int, n_student: int) -> list[int]:
    """Teacher block whose output student block i is matched to, for a student of another depth:
    evenly spaced, the last student block always on the last teacher block."""
    return [max(0, round((i + 1) * n_teacher / n_student) - 1) for i in range(n_student)]


def _decoder_layers_prefix(model, n_layers: int) -> str:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers and name:
            return name + "."
    raise TunesmithError(f"cannot find the {n_layers} decoder blocks of {type(model).__name__} to build a "
                         "`half` student; name a student model instead", field="objective.student")


def half_student(teacher) -> tuple[nn.Module, list[int]]:
    """A plain model of the teacher's class keeping every other block (see ``kept_layers``).

    The config is a deep copy with ``num_hidden_layers`` and every per-layer list (e.g.
    ``layer_types``) cut to the kept blocks; the kept blocks, embeddings, final norm and head
    are copied with a strict ``load_state_dict``, so every weight comes from the teacher and the
    result is the same on every call (the pipeline rebuilds it to reload a trained run).
    """
    cfg = copy.deepcopy(teacher.config)
    n = cfg.num_hidden_layers
    kept = kept_layers(n)
    if len(kept) == n:
        raise TunesmithError("the teacher has a single block; a `half` student needs at least two",
                             field="objective.student")
    for key, value in list(vars(cfg).items()):
        if isinstance(value, (list, tuple)) and len(value) == n and key != "architectures":
            setattr(cfg, key, type(value)(value[i] for i in kept))
    cfg.num_hidden_layers = len(kept)
    student = type(teacher)._from_config(cfg, dtype=next(teacher.parameters()).dtype)
    prefix = _decoder_layers_prefix(teacher, n)
    source = teacher.state_dict()
    mapped = {}
    for key in student.state_dict():
        src = key
        if key.startswith(prefix):
            idx, rest = key[len(prefix):].split(".", 1)
            src = f"{prefix}{kept[int(idx)]}.{rest}"
        mapped[key] = source[src]
    student.load_state_dict(mapped, strict=True)
    if getattr(teacher, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(teacher.generation_config)
    return student.to(next(teacher.parameters()).device), kept


def projection_of(model) -> nn.Linear | None:
    """The feature-matching projection on ``model``'s core, or None."""
    return getattr(core_model(model), PROJECTION, None)


def deployable_parameters(model) -> tuple[int, int]:
    """(parameters, bytes) of the model as exported: peft adapter weights (merged into their base
    layer at export) and the distillation projection (dropped at export) are not counted."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    core = core_model(model)
    skip: set[int] = set()
    for module in core.modules():
        if isinstance(module, BaseTunerLayer):
            skip |= {id(p) for n, p in module.named_parameters() if not n.startswith("base_layer.")}
    proj = projection_of(core)
    if proj is not None:
        skip |= {id(p) for p in proj.parameters()}
    params = [p for p in core.parameters() if id(p) not in skip]
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


# ---- losses -----------------------------------------------------------------------------------

def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row KL(softmax(teacher/T) || softmax(student/T)) (not yet scaled by T²)."""
    vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])   # padded vocabularies may differ
    t = F.log_softmax(teacher_logits[..., :vocab].float() / temperature, dim=-1)
    s = F.log_softmax(student_logits[..., :vocab].float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class DistillObjective:
    """(1 - kd_weight)·CE + kd_weight·T²·KL per target token (response KD), plus feature_weight ×
    hidden-state MSE through a learned projection (feature KD); ``kd: feature`` alone is CE + feature.

    Feature matching, per target position: student block i's output is compared with the output of
    teacher block ``layer_map[i]`` (``half``: the block it was copied from), both RMS-normalised
    (parameter-free, so residual-stream scale does not dominate), and the student's final normed
    hidden state with the teacher's; the MSE is averaged over hidden size and matched layers.

    The teacher is held here, frozen and in eval mode, not as a submodule of the student, so it is
    neither trained nor saved. The projection ``kd_projection`` lives on the student's core model
    (the loop trains it with everything the method left trainable) and is excluded from
    ``save_pretrained`` (``_keys_to_ignore_on_save``), so the merged export is a plain student.
    Methods that freeze all but their adapters (LoRA) freeze it too: ``after_method(model)``
    re-enables it and must run after the method is applied, before the optimizer is built.
    """

    name = "distill"
    generates_text = True       # the tuned model answers in text (else it predicts with its own head)
    compares_baselines = False   # judged against zero-shot / few-shot / RAG on the task metric
    trains_on_text = False       # plain text can be mixed into its training (forgetting.replay)
    own_model = True            # the tuned model is a new model (not the recipe's base plus the method)
    mergeable = True     # the student is a plain transformers model; the projection is not exported

    def __init__(self, teacher: str | None = None, student: str = "half", kd: str = "response",
                 temperature: float = 2.0, kd_weight: float = 0.5, feature_weight: float = 1.0,
                 seed: int = 0, trust_remote_code: bool = False):
        if kd not in ("response", "feature", "both"):
            raise TunesmithError(f"unknown kd '{kd}'; expected response, feature or both", field="objective.kd")
        self.teacher_name, self.student_name, self.kd = teacher, student, kd
        self.temperature, self.kd_weight, self.feature_weight = temperature, kd_weight, feature_weight
        self.seed, self.trust_remote_code = seed, trust_remote_code
        self.sft = SFTObjective()
        self.teacher = None
        self.layer_map: list[int] = []
        self.labels: list[str] | None = None
        self._loaded_teacher = None
        self._teacher_eval: tuple[object, int, dict] | None = None
        self._warned_frozen = False

    @classmethod
    def from_recipe(cls, recipe) -> "DistillObjective":
        o = recipe.objective
        return cls(teacher=o.teacher, student=o.student, kd=o.kd, temperature=o.temperature,
                   kd_weight=o.kd_weight, feature_weight=o.feature_weight, seed=recipe.train.seed,
                   trust_remote_code=recipe.model.trust_remote_code)

    @property
    def response(self) -> bool:
        return self.kd in ("response", "both")

    @property
    def feature(self) -> bool:
        return self.kd in ("feature", "both")

    # ---- data: the SFT token data ---------------------------------------------------------------
    def build(self, splits: dict, tokenizer, recipe) -> tuple[dict, dict]:
        self.labels = label_set(splits.get("train", [])) or None   # as the manifest derives them
        return self.sft.build(splits, tokenizer, recipe)

    def collate(self, items: list, pad_id: int) -> dict:
        return self.sft.collate(items, pad_id)

    # ---- models ---------------------------------------------------------------------------------
    def _load_checked(self, name: str, tokenizer, device, role: str):
        from .. import models
        model, tok = models.load(name, device=str(device), trust_remote_code=self.trust_remote_code)
        if tok.get_vocab() != tokenizer.get_vocab():
            raise TunesmithError(f"distillation {role} '{name}' uses a different tokenizer vocabulary than the "
                                 "recipe's model; teacher and student must share the tokenizer",
                                 field=f"objective.{role}")
        return model

    def _teacher_from(self, base, tokenizer):
        """The teacher: the base model, or the named one (loaded once; it is never modified)."""
        if self.teacher_name is None:
            return base
        device = next(base.parameters()).device
        if self._loaded_teacher is None or next(self._loaded_teacher.parameters()).device != device:
            self._loaded_teacher = self._load_checked(self.teacher_name, tokenizer, device, "teacher")
        return self._loaded_teacher

    def attach(self, model, tokenizer, recipe):
        """Build the student (deterministically, from the teacher's weights or a named model), freeze
        the teacher and add the feature projection; returns the student for the method to tune."""
        teacher = self._teacher_from(model, tokenizer)
        teacher.eval()
        teacher.requires_grad_(False)
        n_teacher = teacher.config.num_hidden_layers
        if self.student_name == "half":
            student, self.layer_map = half_student(teacher)
        else:
            student = self._load_checked(self.student_name, tokenizer, next(teacher.parameters()).device,
                                         "student")
            self.layer_map = uniform_layer_map(n_teacher, student.config.num_hidden_layers)
        self.teacher = teacher
        if self.feature:
            hs, ht = student.config.hidden_size, teacher.config.hidden_size
            proj = nn.Linear(hs, ht)
            with torch.no_grad():
                proj.bias.zero_()
                if hs == ht:
                    proj.weight.copy_(torch.eye(ht))
                else:   # seeded, so a reload rebuilds the same module before its weights are loaded
                    gen = torch.Generator().manual_seed(self.seed)
                    proj.weight.copy_(torch.randn(ht, hs, generator=gen) / hs ** 0.5)
            p = next(student.parameters())
            student.add_module(PROJECTION, proj.to(device=p.device, dtype=p.dtype))
            student._keys_to_ignore_on_save = set(student._keys_to_ignore_on_save or ()) | {
                f"{PROJECTION}.weight", f"{PROJECTION}.bias"}
        return student

    def after_method(self, model):
        """Make the projection trainable again after a method froze it (call before training)."""
        proj = projection_of(model)
        if proj is not None:
            proj.requires_grad_(True)
        return model

    # ---- loss -----------------------------------------------------------------------------------
    def _forward(self, model, batch: dict, keep: torch.Tensor, hidden: bool):
        """Logits at target positions and (for feature KD) the hidden states there: entry j is block j's
        output, except the last entry, which is the final normed state (what the head reads)."""
        n = batch["input_ids"].shape[1]
        inputs = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
        if is_prompt_learning(model):   # the peft wrapper prepends virtual tokens; keep the real ones
            out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                        use_cache=False, output_hidden_states=hidden)
            logits = out.logits[:, -n:][:, :-1][keep]
            states = [h[:, -n:][:, :-1][keep] for h in out.hidden_states[1:]] if hidden else None
            return logits, states
        core = core_model(model)
        out = core.get_decoder()(input_ids=batch["input_ids"], **inputs, use_cache=False,
                                 output_hidden_states=hidden)
        logits = core.get_output_embeddings()(out.last_hidden_state[:, :-1][keep])
        states = None
        if hidden:
            # hidden_states[j + 1] is block j's output; the final entry is taken from last_hidden_state
            states = [h[:, :-1][keep] for h in out.hidden_states[1:-1]] + [out.last_hidden_state[:, :-1][keep]]
        return logits, states

    def _feature_loss(self, model, s_states: list, t_states: list) -> torch.Tensor:
        proj = projection_of(model)
        if proj is None:
            raise TunesmithError("the student has no distillation projection; was it built by attach()?")
        if model.training and not proj.weight.requires_grad and not self._warned_frozen:
            from ..train.progress import console
            console.print("[yellow]distill: the method froze the feature projection; it stays at its initial "
                          "map unless objective.after_method(model) runs after the method is applied[/yellow]")
            self._warned_frozen = True
        last = len(s_states) - 1
        terms = []
        for i, s in enumerate(s_states):
            t = t_states[-1] if i == last else t_states[self.layer_map[i]]
            if i != last:
                s, t = _rms(s), _rms(t)
            terms.append((proj(s).float() - t.float()).pow(2).mean(-1))
        return torch.stack(terms).mean(0)     # per target position

    def __call__(self, model, batch: dict) -> LossOutput:
        if self.teacher is None:
            raise TunesmithError("distill: attach() must build the student before training")
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE
        device = batch["input_ids"].device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        s_logits, s_states = self._forward(model, batch, keep, self.feature)
        s_logits = s_logits.float()
        with torch.no_grad():
            t_logits, t_states = self._forward(self.teacher, batch, keep, self.feature)
        ce = F.cross_entropy(s_logits, targets[keep], reduction="none")
        metrics = {"ce": float(ce.detach().sum())}
        if self.response:
            kl = kd_kl(s_logits, t_logits.float(), self.temperature)
            loss = (1 - self.kd_weight) * ce + self.kd_weight * self.temperature ** 2 * kl
            metrics["kl"] = float(kl.detach().sum())
        else:
            loss = ce
        if self.feature:
            feat = self._feature_loss(model, s_states, t_states)
            loss = loss + self.feature_weight * feat
            metrics["feature"] = float(feat.detach().sum())
        return LossOutput(loss.sum(), int(keep.sum()), metrics)

    # ---- saving ---------------------------------------------------------------------------------
    def save_extra(self, model, out_dir: Path) -> None:
        from ..methods.base import save_tensors
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        proj = projection_of(model)
        if proj is not None:
            save_tensors(dict(proj.state_dict()), out_dir / PROJECTION_FILE, {"objective": self.name})
        atomic_write_json(out_dir / "distill.json", {
            "teacher": self.teacher_name, "student": self.student_name, "kd": self.kd,
            "layer_map": self.layer_map, "student_layers": len(self.layer_map)})

    def load_extra(self, model, in_dir: Path):
        from ..methods.base import load_tensors
        path = Path(in_dir) / PROJECTION_FILE
        proj = projection_of(model)
        if proj is not None and path.is_file():
            proj.load_state_dict(load_tensors(path))
        return model

    # ---- evaluation -----------------------------------------------------------------------------
    def _generation_eval(self, model, tokenizer, examples, items, recipe, title: str) -> dict:
        from ..eval.evaluate import evaluate_model
        return evaluate_model(model, tokenizer, examples, items, recipe, self.labels, self.sft, title=title)

    def evaluate(self, model, tokenizer, examples, items, recipe, which: str = "tuned") -> dict:
        """For ``which="base"`` the teacher's evaluation; for "tuned" the student's, plus a
        ``distillation`` section comparing teacher and student (parameters, size, inference
        tokens/s, task metrics, loss). Generation metrics and SFT cross-entropy, as for any run."""
        if which == "base":
            teacher = self._teacher_from(model, tokenizer)
            result = self._generation_eval(teacher, tokenizer, examples, items, recipe, "eval teacher")
            self._teacher_eval = (teacher, len(examples), result)
            return result
        if self.teacher is None:
            raise TunesmithError("distill: no teacher attached; the student must come from attach()")
        result = self._generation_eval(model, tokenizer, examples, items, recipe, "eval student")
        cached = self._teacher_eval
        teacher_result = cached[2] if cached and cached[0] is self.teacher and cached[1] == len(examples) \
            else self._generation_eval(self.teacher, tokenizer, examples, items, recipe, "eval teacher")
        prompts = [ex.prompt_messages for ex in examples if ex.messages][:THROUGHPUT_PROMPTS]
        sides = {}
        for side, m, res in (("teacher", self.teacher, teacher_result), ("student", model, result)):
            params, nbytes = deployable_parameters(m)
            sides[side] = {"parameters": params, "size_mb": nbytes / 2 ** 20,
                           "layers": core_model(m).config.num_hidden_layers,
                           "tokens_per_s": tokens_per_second(m, tokenizer, prompts, recipe.eval.max_new_tokens,
                                                             recipe.eval.batch_size) if prompts else None,
                           "metrics": res["metrics"], "loss": res["loss"]}
        t, s = sides["teacher"], sides["student"]
        result["distillation"] = {
            "teacher_model": self.teacher_name or recipe.model.name, "student_model": self.student_name,
            "kd": self.kd, "temperature": self.temperature, "kd_weight": self.kd_weight,
            "feature_weight": self.feature_weight, "layer_map": self.layer_map, **sides,
            "compression": t["parameters"] / s["parameters"],
            "speedup": s["tokens_per_s"] / t["tokens_per_s"] if s["tokens_per_s"] and t["tokens_per_s"] else None}
        return result


@torch.inference_mode()
def tokens_per_second(model, tokenizer, prompts: list, max_new_tokens: int, batch_size: int) -> float:
    """Greedy generation throughput: generated tokens / wall time over ``prompts``.

    Every reply is forced to ``max_new_tokens`` (end-of-sequence suppressed until then), so teacher
    and student generate the same number of tokens and the comparison measures speed, not answer
    length. One short warm-up call runs first; adapters are merged as at evaluation.
    """
    from ..generation import eos_token_ids, inference, merged_for_inference, pad_token_id, render_prompt
    texts = [render_prompt(tokenizer, p) for p in prompts]
    device = next(model.parameters()).device
    eos, pad = eos_token_ids(tokenizer, model), pad_token_id(tokenizer)

    def run(chunk: list[str], n_new: int) -> int:
        enc = tokenizer(chunk, add_special_tokens=False, padding=True, return_tensors="pt").to(device)
        out = model.generate(**enc, do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new,
                             use_cache=True, pad_token_id=pad, eos_token_id=eos)
        return int(out[:, enc["input_ids"].shape[1]:].numel())

    with inference(model, tokenizer), merged_for_inference(model):
        run(texts[:1], 2)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0, tokens = time.perf_counter(), 0
        for start in range(0, len(texts), batch_size):
            tokens += run(texts[start:start + batch_size], max_new_tokens)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return tokens / max(time.perf_counter() - t0, 1e-9)


__all__ = ["DistillObjective", "half_student", "kept_layers", "uniform_layer_map", "kd_kl", "projection_of",
           "deployable_parameters", "tokens_per_second", "PROJECTION", "PROJECTION_FILE"]
