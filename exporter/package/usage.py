"""USAGE.md of a package: the few lines an app needs, with this model's numbers filled in."""

from __future__ import annotations

from typing import Any

from exporter.outdir import PACKAGE_TFLITE
from exporter.package.ort_format import ORT_MODEL

# Interpreter-API LiteRT (the org.tensorflow.lite package) and the CocoaPods that carry it.
LITERT_MAVEN = "com.google.ai.edge.litert:litert:1.4.1"
TFLITE_POD = "pod 'TensorFlowLiteSwift', '~> 2.17.0'"
ORT_POD = "pod 'onnxruntime-objc'"


def _floats(values: list[float]) -> str:
    return ", ".join(f"{v:.4f}f" for v in values)


def _swift_floats(values: list[float]) -> str:
    return ", ".join(f"{v:.4f}" for v in values)


def _header(m: dict[str, Any], platform: str) -> list[str]:
    tfl = m["models"][PACKAGE_TFLITE]
    inp, out = tfl["input"], tfl["output"]
    v = m["validation"]
    if m["allow_failed"]:
        status = "FAILED (packaged with --allow-failed)"
    else:
        status = "PASSED" if v["passed"] else "FAILED, the shipped models held every budget"
    return [
        f"# {m['name']} for {platform}",
        "",
        f"Validation: {status} on target `{v['target']}` ({v['device']}); "
        f"{PACKAGE_TFLITE} is `{tfl['source']}`, top-1 {v['tflite']['accuracy']:.2f} % "
        f"(drop {v['tflite']['accuracy_drop']:+.2f} points), "
        f"p90 {v['tflite']['latency_ms']['p90']:.3f} ms.",
        "",
        "| | |",
        "|---|---|",
        f"| input | `{inp['name']}` {inp['dtype']} {inp['shape']} ({inp['layout'].upper()}), "
        f"{inp['color']} |",
        f"| normalization | x = (pixel / 255 - mean) / std, mean {inp['mean']}, std {inp['std']}"
        + (" (done inside the model: feed raw pixels)" if inp["normalization_in_model"] else "")
        + " |",
        (
            "| quantization | none (float input) |"
            if inp["scale"] is None
            else f"| quantization | scale {inp['scale']}, zero point {inp['zero_point']} |"
        ),
        f"| output | `{out['name']}` {out['dtype']} {out['shape']}: {out['kind']} over "
        f"{len(m['classes'])} classes in `labels.txt` order |",
        "",
        "`manifest.json` lists every file with its sha256; `edgepack package --verify ZIP` checks "
        "them and runs both models.",
        "",
    ]


def _android(m: dict[str, Any]) -> list[str]:
    inp = m["models"][PACKAGE_TFLITE]["input"]
    n, h, w, c = (
        inp["shape"] if inp["layout"] == "nhwc" else [inp["shape"][i] for i in (0, 2, 3, 1)]
    )
    classes = len(m["classes"])
    ort_version = m["versions"]["onnxruntime"]
    uint8 = inp["dtype"] == "uint8"
    put = "buf.put(v.toByte())" if uint8 else "buf.putFloat((v / 255f - MEAN[ch]) / STD[ch])"
    return [
        "## Android (Kotlin, LiteRT Interpreter)",
        "",
        f"Copy `{PACKAGE_TFLITE}` and `labels.txt` to `app/src/main/assets/`, keep the model "
        "uncompressed, and add the dependency:",
        "",
        "```kotlin",
        "// build.gradle.kts",
        f'dependencies {{ implementation("{LITERT_MAVEN}") }}',
        'android { androidResources { noCompress += "tflite" } }',
        "```",
        "",
        "```kotlin",
        "import org.tensorflow.lite.Interpreter",
        "import java.nio.ByteBuffer",
        "import java.nio.ByteOrder",
        "import java.nio.channels.FileChannel",
        "",
        f"val MEAN = floatArrayOf({_floats(inp['mean'])})",
        f"val STD = floatArrayOf({_floats(inp['std'])})",
        "",
        "fun loadModel(context: android.content.Context): Interpreter {",
        f'    val fd = context.assets.openFd("{PACKAGE_TFLITE}")',
        "    val model = fd.createInputStream().channel.map(",
        "        FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)",
        "    return Interpreter(model, Interpreter.Options().setNumThreads(2))",
        "}",
        "",
        f"// pixels: {h}x{w}, {c} channel(s) per pixel ({inp['color']}), 0..255, row-major",
        "fun classify(interpreter: Interpreter, pixels: IntArray): Int {",
        f"    val buf = ByteBuffer.allocateDirect({n * h * w * c * (1 if uint8 else 4)})"
        ".order(ByteOrder.nativeOrder())",
        f"    for (i in 0 until {h * w}) for (ch in 0 until {c}) {{",
        f"        val v = pixels[i * {c} + ch]",
        f"        {put}",
        "    }",
        f"    val logits = Array(1) {{ FloatArray({classes}) }}",
        "    interpreter.run(buf.rewind(), logits)",
        "    return logits[0].indices.maxBy { logits[0][it] }  // index into labels.txt",
        "}",
        "```",
        "",
        f'The Task Library (`ImageClassifier.createFromFile(context, "{PACKAGE_TFLITE}")`) can use '
        "the same file: its metadata carries the labels and normalization.",
        "",
        f"### ONNX Runtime Mobile ({ORT_MODEL})",
        "",
        "```kotlin",
        f'implementation("com.microsoft.onnxruntime:onnxruntime-android:{ort_version}")',
        "",
        "val env = ai.onnxruntime.OrtEnvironment.getEnvironment()",
        f'val session = env.createSession(context.assets.open("{ORT_MODEL}").readBytes())',
        "```",
        "",
        f"`{ORT_MODEL}` takes {_ort_input(m)}; `required_operators.config` lists its operators "
        "for a reduced ONNX Runtime build (`--include_ops_by_config`).",
        "",
    ]


def _ort_input(m: dict[str, Any]) -> str:
    o = m["models"].get(ORT_MODEL, {}).get("input")
    return f"`{o['name']}` {o['dtype']} {o['shape']} ({o['layout'].upper()})" if o else "-"


def _ios(m: dict[str, Any]) -> list[str]:
    inp = m["models"][PACKAGE_TFLITE]["input"]
    n, h, w, c = (
        inp["shape"] if inp["layout"] == "nhwc" else [inp["shape"][i] for i in (0, 2, 3, 1)]
    )
    uint8 = inp["dtype"] == "uint8"
    feed = (
        "let data = Data(pixels)"
        if uint8
        else "let values: [Float32] = pixels.enumerated().map { i, p in\n"
        f"    (Float32(p) / 255 - mean[i % {c}]) / std[i % {c}] }}\n"
        "let data = values.withUnsafeBufferPointer { Data(buffer: $0) }"
    )
    return [
        "## iOS (Swift, TensorFlowLiteSwift Interpreter)",
        "",
        f"Add `{PACKAGE_TFLITE}` and `labels.txt` to the app target, and to the Podfile:",
        "",
        "```ruby",
        TFLITE_POD,
        "```",
        "",
        "```swift",
        "import TensorFlowLite",
        "",
        f"let mean: [Float32] = [{_swift_floats(inp['mean'])}]",
        f"let std: [Float32] = [{_swift_floats(inp['std'])}]",
        "",
        f"// pixels: {n}x{h}x{w}x{c} ({inp['color']}), 0...255, row-major",
        "func classify(pixels: [UInt8]) throws -> Int {",
        '    let path = Bundle.main.path(forResource: "model", ofType: "tflite")!',
        "    let interpreter = try Interpreter(modelPath: path)",
        "    try interpreter.allocateTensors()",
        *["    " + line for line in feed.splitlines()],
        "    try interpreter.copy(data, toInputAt: 0)",
        "    try interpreter.invoke()",
        "    let out = try interpreter.output(at: 0)",
        "    let logits = out.data.withUnsafeBytes { Array($0.bindMemory(to: Float32.self)) }",
        "    return logits.indices.max { logits[$0] < logits[$1] }!  // index into labels.txt",
        "}",
        "```",
        "",
        f"### ONNX Runtime Mobile ({ORT_MODEL})",
        "",
        "```ruby",
        ORT_POD,
        "```",
        "",
        "```swift",
        "import onnxruntime_objc",
        "",
        "let env = try ORTEnv(loggingLevel: .warning)",
        'let ortPath = Bundle.main.path(forResource: "model", ofType: "ort")!',
        "let session = try ORTSession(env: env, modelPath: ortPath, sessionOptions: nil)",
        "```",
        "",
        f"`{ORT_MODEL}` takes {_ort_input(m)}.",
        "",
    ]


def render_usage(manifest: dict[str, Any], platform: str) -> str:
    body = _android(manifest) if platform == "android" else _ios(manifest)
    return "\n".join(_header(manifest, platform) + body)
