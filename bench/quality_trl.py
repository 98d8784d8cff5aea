"""The `trl` system of `bench/quality.py`: TRL SFTTrainer + peft LoRA with their documented defaults,
stopped when the training budget is spent, evaluated by tunesmith on the task's test set.

The run folder is a tunesmith run prepared from the task's recipe (same cleaning, split and test
items), so its evaluation, baselines (reused from the eval cache) and forgetting check are tunesmith's.
Only what a CPU-only run and a fair comparison need is set on TRL's side: ``use_cpu``,
``report_to="none"``, ``save_strategy="no"``, the stop at the budget. TRL's defaults are otherwise
kept: 3 epochs at learning rate 2e-5, batch 8, bf16 autocast where the machine allows it, gradient
checkpointing; ``LoraConfig`` r=8, alpha 8 on peft's default modules for the architecture.

``trl_cpu`` is TRL as someone who knows this machine would set it: bf16 and gradient checkpointing off
(a CPU without native bf16 runs bf16 autocast several times slower than fp32), learning rate 2e-4 and
LoRA r=16 / alpha 32 / dropout 0.05 on every projection -- the settings tunesmith's defaults use.
"""
from __future__ import annotations

import json
import math
import sys
import time


CPU_SETTINGS = {"bf16": False, "gradient_checkpointing": False, "learning_rate": 2e-4}
CPU_LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}


def main(recipe_path: str, budget_s: str, system: str = "trl") -> None:
    import datasets
    import yaml
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    import tunesmith
    from tunesmith import models
    from tunesmith.eval import stage
    from tunesmith.fsutil import atomic_write_json
    from tunesmith.session import Session

    budget = float(budget_s)
    recipe = yaml.safe_load(open(recipe_path))
    recipe["name"] = f"{recipe['name']}-{system.replace('_', '-')}"
    tuned_cfg = system == "trl_cpu"
    recipe["eval"]["baselines"] = ["few_shot", "rag"]       # the defaults run measured them: cache hits
    run = tunesmith.prepare(recipe)
    session = Session(run)
    base_result = stage.measure_base(session)
    datasets.disable_progress_bars()
    rows = [{"prompt": ex.prompt_messages, "completion": [{"role": "assistant", "content": ex.reference}]}
            for ex in session.splits["train"] if ex.reference is not None]
    model, tok = models.load(recipe["model"]["name"])
    common = dict(output_dir=str(run.path / "trl"), use_cpu=True, report_to="none", save_strategy="no",
                  max_length=recipe["data"].get("max_length", 1024))
    notes = []
    if tuned_cfg:
        common.update(CPU_SETTINGS)
    try:
        args = SFTConfig(**common)
    except ValueError as e:          # bf16 refused on this machine: record it and run without
        notes.append(f"SFTConfig refused its default bf16 here ({e}); ran with bf16=False")
        args = SFTConfig(**common, bf16=False)
    seen = {"examples": 0, "stopped_by_budget": False}

    class Budget(TrainerCallback):
        t0 = None

        def on_train_begin(self, *_a, **_k):
            self.t0 = time.perf_counter()

        def on_step_end(self, args_, state, control, **_k):
            seen["examples"] = state.global_step * args_.per_device_train_batch_size * \
                args_.gradient_accumulation_steps
            if time.perf_counter() - self.t0 >= budget:
                seen["stopped_by_budget"] = True
                control.should_training_stop = True

    timer = Budget()
    trainer = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tok, peft_config=LoraConfig(task_type="CAUSAL_LM", **(CPU_LORA if tuned_cfg else {})), callbacks=[timer])
    planned = math.ceil(len(trainer.train_dataset) / args.per_device_train_batch_size
                        / args.gradient_accumulation_steps) * args.num_train_epochs
    trainer.train()
    wall = time.perf_counter() - timer.t0
    tuned = trainer.model.eval()
    trainable = sum(p.numel() for p in tuned.parameters() if p.requires_grad)
    if args.gradient_checkpointing:        # generation wants its KV cache back
        tuned.base_model.model.gradient_checkpointing_disable()
    tuned.base_model.model.config.use_cache = True
    info = {"system": system, "steps": trainer.state.global_step, "planned_steps": planned, "wall_s": wall,
            "examples_seen": min(seen["examples"], len(rows) * args.num_train_epochs),
            "stopped_by_budget": seen["stopped_by_budget"], "trainable_parameters": trainable,
            "settings": {"learning_rate": args.learning_rate, "epochs": args.num_train_epochs,
                         "batch_size": args.per_device_train_batch_size, "bf16": args.bf16,
                         "gradient_checkpointing": args.gradient_checkpointing,
                         "lora": CPU_LORA if tuned_cfg else "peft LoraConfig defaults (r=8, alpha 8)"},
            "notes": notes}
    atomic_write_json(run.train_json, info)
    for p in tuned.parameters():
        p.requires_grad_(False)
    tunesmith.evaluate(run, session=session, base_result=base_result, tuned_model=tuned)
    print(json.dumps({"run": str(run.path), "steps": info["steps"], "stopped_by_budget": seen["stopped_by_budget"],
                      "notes": notes}))


if __name__ == "__main__":
    main(*sys.argv[1:])
