"""`--set` options shared by the robustness tests: small, fast runs."""

# Small runs: one fine-tune epoch, few timed runs, a 120-image eval batch. The accuracy budget
# is opened up because a 2-epoch model pruned to 75 % may lose more than 1.5 points, and these
# tests are about robustness, not accuracy (exit 1 would hide what they check).
FAST = (
    "--set",
    "runtime.runs=5",
    "--set",
    "runtime.warmup=1",
    "--set",
    "compress.finetune.epochs=1",
    "--set",
    "eval.samples=120",
    "--set",
    "budgets.max_accuracy_drop=100",
)
FP32_ONLY = (
    "--set",
    'export.formats=["onnx","tflite"]',
    "--set",
    'export.precisions=["fp32"]',
    "--set",
    'export.storage=["dense"]',
)
