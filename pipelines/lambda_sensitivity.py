"""Lambda sensitivity (paper 003 Fig. 5): PICA vs LSD over lambda x seeds, nested . ...

The study lives in usclf/studies/lambda_sensitivity.py (usage in its docstring)."""
import sys

from usclf.studies.lambda_sensitivity import main

if __name__ == "__main__":
    sys.exit(main())
