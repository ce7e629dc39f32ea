"""HTTP load tests of the k2d service: teacher versus student, concurrency sweeps, reports."""
