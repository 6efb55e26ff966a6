"""`python -m studies.bench`: the bench's command line (also `python -m studies bench run`), and the entry
point of the worker and probe processes it starts."""
from studies.bench import main

main()
