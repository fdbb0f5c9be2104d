"""The rules a run is validated against, without torch: each strategy's parameters and config checks
(`mmhpc.rules.strategies`), and what a precision or a parallelism needs of the devices
(`mmhpc.rules.system`). The trainer's classes inherit these same definitions, so `mmhpc config` and
`mmhpc sweep expand|submit` on a login node (pure Python: pydantic, PyYAML, submitit) check exactly
what the job will run."""
