"""Study pipelines (demo, evidence runs, paper checks, benchmarks), importable as `usclf.studies.NAME`;
`python pipelines/NAME.py ...` runs each one (see its docstring)."""
