"""Side-by-side studies with their own command, each table in docs/: the Open Inference Protocol
against /classify (oip_compare), fp32/fp16/int8 exports (precisions), fine-tuning against training
from scratch (finetune)."""
