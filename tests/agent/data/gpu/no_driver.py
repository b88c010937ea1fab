"""What nvidia-smi does when the driver is not loaded: a message and exit status 9."""
import sys

print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
sys.exit(9)
