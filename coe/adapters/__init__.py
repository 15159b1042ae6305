"""LoRA adapters as experts: build skill data, train an adapter with peft on an embedded base,
convert it into the GGUF LoRA that llama.cpp applies per request on the base's one load.

Nothing heavy is imported here: torch, transformers and peft load inside `train`, the `gguf`
package inside `convert`, and only when called.
"""
