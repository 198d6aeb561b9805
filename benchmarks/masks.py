"""Benchmark: seconds per frame of the mask engines on a clip of two moving subjects.

Engines, all with random weights built in code (no download; the timings do not depend on the weights):
  sam2      Sam2VideoSegmenter with the facebook/sam2.1-hiera-tiny architecture, at each --sizes input side and
            each --strides frame stride, both subjects boxed on frame 0 (one warm-up run on 2 frames first);
  detector  GroundingDetector with the IDEA-Research/grounding-dino-tiny architecture (Swin-T + BERT-base) on one
            frame (processor at its real 800/1333 resize), best of 2 runs;
  basic     dreamrelation.masks.basic.segment_basic, when that module exists.

Prints a markdown table. Run from the repository root:
  PYTHONPATH=. .venv/bin/python benchmarks/masks.py                 # 61 frames at 480x848
  PYTHONPATH=. .venv/bin/python benchmarks/masks.py --frames 7      # a quick run
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dreamrelation.masks.prompts import SubjectPrompt  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=61, help="Clip frames (default 61).")
    parser.add_argument("--height", type=int, default=480, help="Clip height in pixels (default 480).")
    parser.add_argument("--width", type=int, default=848, help="Clip width in pixels (default 848).")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 512], help="SAM2 input sides.")
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 4], help="SAM2 frame strides.")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda[:N]'.")
    parser.add_argument("--skip", nargs="*", default=[], choices=("sam2", "detector", "basic"), help="Engines to skip.")
    return parser.parse_args(argv)


def synthetic_clip(frames: int, height: int, width: int) -> tuple[np.ndarray, list[SubjectPrompt]]:
    """uint8 (F, H, W, 3): a red and a blue disc crossing a grey noisy background; their frame-0 boxes."""
    rng = np.random.default_rng(0)
    clip = np.clip(rng.normal(128, 6, (frames, height, width, 3)), 0, 255).astype(np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    radius = height // 6
    boxes = []
    for subject, (colour, start, end) in enumerate((((200, 40, 40), 0.25, 0.6), ((40, 40, 200), 0.75, 0.4))):
        for t in range(frames):
            cx = width * (start + (end - start) * t / max(frames - 1, 1))
            cy = height * (0.5 + 0.1 * subject)
            clip[t][(ys - cy) ** 2 + (xs - cx) ** 2 < radius**2] = colour
            if t == 0:
                boxes.append(SubjectPrompt(subject, 0, box=(cx - radius, cy - radius, cx + radius, cy + radius)))
    return clip, boxes


def sam2_hiera_tiny_config():
    """facebook/sam2.1-hiera-tiny's architecture (its config.json values)."""
    from transformers import Sam2VideoConfig

    return Sam2VideoConfig(
        vision_config=dict(
            model_type="sam2_vision_model",
            backbone_config=dict(
                model_type="sam2_hiera_det_model",
                hidden_size=96,
                num_attention_heads=1,
                blocks_per_stage=[1, 2, 7, 2],
                embed_dim_per_stage=[96, 192, 384, 768],
                num_attention_heads_per_stage=[1, 2, 4, 8],
                window_size_per_stage=[8, 4, 14, 7],
                global_attention_blocks=[5, 7, 9],
                window_positional_embedding_background_size=[7, 7],
            ),
            backbone_channel_list=[768, 384, 192, 96],
            fpn_hidden_size=256,
        ),
        num_maskmem=7,
        image_size=1024,
        memory_attention_num_layers=4,
        memory_encoder_output_channels=64,
        max_object_pointers_in_encoder=16,
        enable_occlusion_spatial_embedding=True,
        enable_temporal_pos_encoding_for_object_pointers=True,
        multimask_output_for_tracking=True,
    )


def grounding_dino_tiny_config(vocab_size: int):
    """IDEA-Research/grounding-dino-tiny's architecture: Swin-T backbone, BERT-base text encoder, 6+6 layers."""
    from transformers import GroundingDinoConfig

    return GroundingDinoConfig(
        backbone_config=dict(
            model_type="swin", embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
            image_size=224, out_indices=[2, 3, 4],
        ),
        text_config=dict(model_type="bert", vocab_size=vocab_size),  # BERT-base otherwise (768 wide, 12 layers)
        d_model=256, encoder_layers=6, decoder_layers=6, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
        num_queries=900, max_text_len=256, num_feature_levels=4, two_stage=True,
    )  # fmt: skip


def time_sam2(folder: str, device: str, clip: np.ndarray, prompts, sizes, strides) -> list[tuple]:
    """Rows (engine, input, stride, s/frame, total s) of the SAM2 segmenter."""
    from dreamrelation.masks.sam2 import Sam2VideoSegmenter

    rows = []
    for size in sizes:
        segmenter = Sam2VideoSegmenter(folder, device, input_size=size)
        segmenter.segment(clip[:2], prompts)  # warm-up: kernels, allocator
        for stride in strides:
            start = time.perf_counter()
            segmenter.segment(clip, prompts, frame_stride=stride)
            total = time.perf_counter() - start
            rows.append(("SAM2 hiera-tiny", size, stride, total / len(clip), total))
    return rows


def time_detector(folder: str, device: str, frame: np.ndarray) -> tuple:
    """Row of the GroundingDINO-tiny detector on one frame (best of 2)."""
    from dreamrelation.masks.grounding import GroundingDetector

    detector = GroundingDetector(folder, device)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        detector.detect(frame, ["a red ball", "a blue ball"])
        best = min(best, time.perf_counter() - start)
    return ("GroundingDINO tiny (one frame)", "800/1333", "-", best, best)


def time_basic(clip: np.ndarray) -> tuple | None:
    """Row of the basic segmenter, or None when dreamrelation.masks.basic does not exist yet."""
    if importlib.util.find_spec("dreamrelation.masks.basic") is None:
        return None
    from dreamrelation.masks.basic import segment_basic

    start = time.perf_counter()
    segment_basic(clip)
    total = time.perf_counter() - start
    return ("basic", "full", 1, total / len(clip), total)


def save_sam2(folder: str) -> None:
    from transformers import Sam2VideoModel

    Sam2VideoModel(sam2_hiera_tiny_config()).save_pretrained(folder)


def save_grounding_dino(folder: str) -> None:
    """Random GroundingDINO-tiny plus its processor; a small word-level tokenizer stands in for BERT's vocab."""
    from transformers import BertTokenizer, GroundingDinoForObjectDetection, GroundingDinoProcessor
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "red", "blue", "ball"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    GroundingDinoForObjectDetection(grounding_dino_tiny_config(vocab_size=30522)).save_pretrained(folder)
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(), tokenizer=tokenizer)
    processor.save_pretrained(folder)


def stride_iou(strides: list[int], num_frames: int = 61, size: int = 128) -> list[tuple[int, float, float]]:
    """How much frame-stride interpolation alone costs: Shapes World ground-truth masks (every relation, both
    backgrounds), kept on SAM2's keyframes only and filled by the segmenter's interpolation, against the truth.
    Returns (stride, mean IoU, min IoU) over subjects and clips."""
    from dreamrelation.masks.quality import mask_iou
    from dreamrelation.masks.sam2 import _fill_frames, _keyframes
    from dreamrelation.toyworld.render import render_scene
    from dreamrelation.toyworld.world import sample_scenes

    rows = []
    scenes = sample_scenes(16, seed=0)
    truths = [render_scene(scene, num_frames, size, size)[1] for scene in scenes]
    for stride in strides:
        ious = []
        for truth in truths:
            keys = _keyframes(num_frames, stride, {0})
            logits = {i: torch.from_numpy(truth[:, k, None].astype(np.float32) * 20 - 10) for i, k in enumerate(keys)}
            filled = _fill_frames(logits, keys, num_frames, size, size)
            ious += [mask_iou(filled[subject], truth[subject]) for subject in range(2)]
        rows.append((stride, float(np.mean(ious)), float(np.min(ious))))
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    clip, prompts = synthetic_clip(args.frames, args.height, args.width)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if "sam2" not in args.skip:
            save_sam2(f"{tmp}/sam2")
            rows += time_sam2(f"{tmp}/sam2", args.device, clip, prompts, args.sizes, args.strides)
        if "detector" not in args.skip:
            save_grounding_dino(f"{tmp}/gdino")
            rows.append(time_detector(f"{tmp}/gdino", args.device, clip[0]))
    basic = None if "basic" in args.skip else time_basic(clip)
    if basic is not None:
        rows.append(basic)
    print(f"\n{args.frames} frames at {args.height}x{args.width}, device {args.device}, torch threads "
          f"{torch.get_num_threads()}\n")  # fmt: skip
    print("| engine | input | stride | s/frame | total s |\n|---|---|---|---|---|")
    for engine, size, stride, per_frame, total in rows:
        print(f"| {engine} | {size} | {stride} | {per_frame:.3f} | {total:.1f} |")
    if basic is None and "basic" not in args.skip:
        print("\n(basic segmenter: dreamrelation.masks.basic not present, skipped)")
    print("\nIoU kept by frame-stride interpolation alone (Shapes World ground truth, 61 frames at 128x128):\n")
    print("| stride | mean IoU | min IoU |\n|---|---|---|")
    for stride, mean, low in stride_iou(sorted({1, 2, 4, *args.strides})):
        print(f"| {stride} | {mean:.3f} | {low:.3f} |")


if __name__ == "__main__":
    main()
