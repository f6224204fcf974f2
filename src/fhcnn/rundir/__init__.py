"""Output folders of runs: which folder may be written, and what may be replaced there.

A run folder carries ``run.json``, written by fhcnn: the tool, the version, the command, the
fingerprints of the inputs, a hash of the resolved config, every file fhcnn wrote there with
its size and sha256 (recorded *before* the finished file takes its name, so the record survives
a crash), every folder it created, and the scratch it is making (temporary files and folders,
recorded before they exist and forgotten once gone). Only a folder with that record counts as
a run; ``--overwrite`` removes only the listed files that still match their record and the
scratch a killed run left (``--resume`` too removes that scratch); ``--resume`` is refused
when the inputs or the config differ from the recorded ones. While a run writes, the folder is
locked and every write goes through its :class:`RunFolder`: never through a link, never into a
folder fhcnn did not create, never over a file that is not fhcnn's own.

The package holds one idea per module:

* :mod:`~fhcnn.rundir.identity`: the identity of a run's inputs and config (fingerprints,
  content digests, the config digest);
* :mod:`~fhcnn.rundir.folder`: the record ``run.json``, the guard of every write
  (:class:`RunFolder`) and the folder's lock;
* :mod:`~fhcnn.rundir.inputs`: the inputs a run reads (the same on every process, unchanged
  while it reads them, their contents kept for ``--resume``);
* :mod:`~fhcnn.rundir.prepare`: preparing OUT (:func:`prepare_output_dir`), one output file
  (:func:`check_output_file`), a run's own checkpoint (:func:`check_own_checkpoint`);
* :mod:`~fhcnn.rundir.copies`: the one-time local copies of inputs slow to read by window
  (:func:`copy_input`);
* :mod:`~fhcnn.rundir.lines`: the one line of a run that stops (:func:`stopped_run_line`,
  :func:`unwritable_line`).
"""

from .copies import copy_input
from .folder import RUN_FILE, RunFolder, resolve_path
from .identity import config_digest, content_digest, fingerprint
from .inputs import (
                     InputsChangedError,
                     check_inputs_unchanged,
                     join_processes,
                     same_inputs_everywhere,
                     stop_watching_input,
)
from .lines import UNWRITABLE_ERRNOS, stopped_run_line, unwritable_line
from .prepare import OUTPUTS, check_output_file, check_own_checkpoint, prepare_output_dir

__all__ = ["prepare_output_dir", "check_output_file", "RunFolder", "RUN_FILE", "OUTPUTS", "resolve_path",
           "fingerprint", "config_digest", "copy_input", "check_own_checkpoint", "stopped_run_line",
           "unwritable_line", "UNWRITABLE_ERRNOS", "content_digest", "join_processes", "same_inputs_everywhere",
           "check_inputs_unchanged", "stop_watching_input", "InputsChangedError"]
