"""What a run is and what it leaves on disk: its configuration (config.toml, recipes), the run
folder, checkpoints, final weights and the tensor files under them, resuming, and loading a
trained model to feed it images as its training did. Everything here reads and writes files;
nothing trains. The training loop (cnnlab.train), reports on runs (cnnlab.reports) and studies
(cnnlab.studies) build on it."""
