"""The K²D stages, in the order ``k2d run`` executes them (``k2d_train.pipeline.run``).

1. corpus (``k2d_train.data``): unlabelled lectures + in-domain and out-of-domain dev/test sets
2. ``s2_pseudo_label``: the teacher labels ≤ 30 s chunks, keeping its own token ids
3. ``s3_validate``: a validator re-decodes each segment; disagreeing segments are dropped
4. ``s4_student``: the student is initialised from the teacher (encoder + spaced decoder layers)
5. ``s5_distill_encoder``: the student encoder learns short-context input from the teacher's 30 s states
6. ``s6_distill``: the K²D decoder distillation (0.8·CE + 1.0·KL, T = 2)
8. export (``k2d_train.store.operations.export``): CTranslate2, with the student's context policy
9. ``s9_evaluate``: MER in and out of domain, repetition loops, speed, through the serving path

Each module is importable on its own; ``k2d_cli.train`` exposes each as a command.
"""
