# The compiled forms of this package's hot modules, first when built and
# fresh (patronage/compiled.py); otherwise the sources here.
from patronage.compiled import activate

activate(__path__)
