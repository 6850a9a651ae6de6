"""Model plumbing shared by the trainer, the live demo and the benchmarks (diffusers and
transformers, so it is not part of hypersd_core): loading SD1.5/SDXL from folders or single
files, the embedded digits model and its classifier, the CLIP tokenizer lookup, TAESD decoders,
dtypes by name and GPU speed settings. Prompt encoding and the UNet wrapper are hypersd_core's
(``generate.PromptEncoder``, ``generate.UNetNet``), duck-typed over these models.
"""
