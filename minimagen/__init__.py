"""minimagen: learn Imagen (Saharia et al., NeurIPS 2022) by building it.

One module per idea, in the order the lessons introduce them:
data -> schedules -> diffusion -> samplers -> unet -> text -> train -> guidance -> thresholding
-> metrics -> cascade. Import the module you need (``from minimagen import schedules``); importing the
package itself loads nothing heavy.
"""

__version__ = "0.1.0"
