"""Recipes the CPU benchmarks share (quality.py, online_update.py): steps and rates per task."""

CPU_RECIPE = {  # sized for 2 CPU cores: ~5-6 s a step at batch 8 with SmolLM2-135M
    "huffpost_2N": {"stage1.steps": 150, "stage2.steps": 150},
    "movielens_2M": {"stage1.steps": 60, "stage2.steps": 60},
    # Headlines: 8 x (160 + 32) tokens, about 3 s a step on the AMD EPYC box.
    "huffpost_4": {"stage1.steps": 150, "stage2.steps": 150},
    # Ratings: 8 x (96 + 4) tokens, the cheapest step of the four tasks.
    "movielens_3": {"stage1.steps": 300, "stage2.steps": 300},
}
SHORT_RATES = {  # few steps: the demo's rates (peft-initialised LoRA), chosen before any test run
    "stage1.learning_rate": 1e-3, "stage2.learning_rate": 1e-3,
    "stage2.table_learning_rate": 1e-2,
    # What the CPU budgets ran with before the defaults became the official code's recipe
    # (batch 8-32 by task, warmup 0.03 / 0.1): kept, so their recorded results stay comparable.
    "stage2.batch_size": 8, "stage1.warmup": 0.05, "stage2.warmup": 0.05}
