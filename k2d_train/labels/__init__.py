"""From the teacher's output to training labels: chunks, tokens, batched decoding, phonemes, CTC units, Hugging
Face datasets as input.
"""
