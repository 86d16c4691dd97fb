"""`sbs vocab`: train the student's SentencePiece vocabulary on annotated train text
(`sbs_jax/data/vocab.py`)."""

from __future__ import annotations

import json
import sys

from sbs_jax.data import vocab


def add_parser(subparsers) -> None:
  p = subparsers.add_parser(
      "vocab", help="train a SentencePiece vocabulary on annotated train text",
      description="Trains a SentencePiece model (T5 ids: 0 pad, 1 EOS, 2 unk) on the inputs, "
      "labels and rationales of the train split (validation carve and test excluded).")
  p.add_argument("--annotation_dir", required=True)
  p.add_argument("--datasets", required=True, help="comma-separated, e.g. cqa,svamp")
  p.add_argument("--out", required=True, help="path of the .model file to write")
  p.add_argument("--vocab_size", type=int, default=8000)
  p.add_argument("--model_type", choices=("unigram", "bpe"), default="unigram",
                 help="SentencePiece's algorithm (default: %(default)s); bpe gives about one "
                 "piece per word on a small, repetitive corpus such as `sbs synthetic`'s")
  p.set_defaults(func=main)


# A vocabulary this much smaller than asked, at this many tokens per word, is noted.
_SMALL_SHARE, _TOKENS_PER_WORD = 0.5, 1.5


def main(args) -> int:
  datasets = [d for d in args.datasets.split(",") if d]
  sample: list[str] = []  # texts for tokens_per_word, kept as training reads them

  def texts():
    for i, text in enumerate(vocab.train_texts(args.annotation_dir, datasets)):
      if 2 <= i < 1002:  # (after the two task prefixes)
        sample.append(text)
      yield text

  # Lazy: train_vocabulary checks the output path before the annotations are read.
  path = vocab.train_vocabulary(texts(), args.out, vocab_size=args.vocab_size,
                                model_type=args.model_type)
  processor = vocab.sentencepiece_processor(str(path))
  size = processor.get_piece_size()
  per_word = vocab.tokens_per_word(processor, sample)
  print(json.dumps({"vocabulary": str(path), "pieces": size, "model_type": args.model_type,
                    "tokens_per_word": round(per_word, 2), "datasets": datasets}))
  if size < _SMALL_SHARE * args.vocab_size and per_word > _TOKENS_PER_WORD and \
     args.model_type == "unigram":
    print(f"note: the texts gave {size} pieces of the {args.vocab_size} asked, "
          f"{per_word:.1f} tokens per word: a small, repetitive corpus, on which "
          "--model_type bpe gives about one piece per word (shorter rows; "
          "docs/experiments.md)", file=sys.stderr)
  return 0
