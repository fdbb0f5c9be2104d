"""Imported only by the multiprocessing forkserver (first in its preload list, see
`loading.worker_context`):
imports the parent's main module there once, so that no worker has to."""
from mmhpc.data.loading import prepare_forkserver_main

prepare_forkserver_main()
