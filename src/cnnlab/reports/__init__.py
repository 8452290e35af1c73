"""Looking at runs: the leaderboard and comparison of run folders, learning curves and
confusion matrices as pictures, the self-contained HTML report, and TensorBoard event files.
Reads what cnnlab.runs describes; never trains."""
