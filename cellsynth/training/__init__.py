"""What both GAN trainers share: run folders, safe checkpoints, distributed launch, logging and
image grids."""
