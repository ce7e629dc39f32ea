"""The K²D stages, in the order ``k2d run`` executes them (``k2d_train.pipeline``).

0. corpus (``k2d_train.data``): unlabelled lectures + in-domain and out-of-domain dev/test sets
1. ``s1_pseudo_label``: the teacher labels ≤ 30 s chunks, keeping its own token ids
2. ``s2_validate``: a validator re-decodes each segment; disagreeing segments are dropped
3. ``s3_student``: the student is initialised from the teacher (encoder + spaced decoder layers)
4. ``s4_distill_encoder``: the student encoder learns short-context input from the teacher's 30 s states
5. ``s5_distill``: the K²D decoder distillation (0.8·CE + 1.0·KL, T = 2)
6. export (``k2d_train.store.operations.export``): CTranslate2, with the student's context policy
7. ``s7_evaluate``: MER in and out of domain, repetition loops, speed, through the serving path

Each module is importable on its own; ``k2d_cli.train`` exposes each as a command.
"""
