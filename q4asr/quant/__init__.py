"""Native int4/int8 quantization-aware training (see docs/quantization.md).

plan = load_plan("conf/plans/w4a8.yaml")
model = prepare(model, plan)        # QAT modules sharing the float Parameters
...train...
model = convert(model)              # integer modules, same outputs bit for bit
save_quantized("model.int.safetensors", model, {"model_config": json.dumps(cfg)})
"""

from q4asr.quant.config import PlanError, Precision, PrecisionPlan, Rule, load_plan
from q4asr.quant.convert import (
    calibrate,
    convert,
    integer_skeleton,
    prepare,
    set_quant_mode,
    unprepare,
)
from q4asr.quant.integer import (
    QAT_TO_INT,
    IntConv1d,
    IntConv2d,
    IntEmbedding,
    IntLayerNorm,
    IntLinear,
    IntModule,
)
from q4asr.quant.qat import (
    FLOAT_TO_QAT,
    QATConv1d,
    QATConv2d,
    QATEmbedding,
    QATLayerNorm,
    QATLinear,
)
from q4asr.quant.serialize import (
    format_size_table,
    load_quantized,
    save_quantized,
    size_report,
    size_report_json,
    size_total,
)

__all__ = [
    "PlanError",
    "Precision",
    "PrecisionPlan",
    "Rule",
    "load_plan",
    "prepare",
    "unprepare",
    "calibrate",
    "convert",
    "integer_skeleton",
    "set_quant_mode",
    "save_quantized",
    "load_quantized",
    "size_report",
    "size_report_json",
    "size_total",
    "format_size_table",
    "FLOAT_TO_QAT",
    "QAT_TO_INT",
    "QATLinear",
    "QATConv1d",
    "QATConv2d",
    "QATEmbedding",
    "QATLayerNorm",
    "IntModule",
    "IntLinear",
    "IntConv1d",
    "IntConv2d",
    "IntEmbedding",
    "IntLayerNorm",
]
