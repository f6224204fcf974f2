from .cli import main
from .training.distributed import exit_program

exit_program(main())
