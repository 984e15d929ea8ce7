"""Guided disaster-recovery drills: a scenario (steady-state probe, fault, recovery runbooks,
verification, return to steady state, targets) run and measured. RTO and RPO come from the
probe's log of acknowledged writes compared with what the recovered service holds."""
