"""Pneumonia detection on chest X-rays: the package the notebooks call.

Modules (import the one you need; importing ``helpers`` itself does nothing heavy):

* ``helpers.config``    -- data / weights / artifacts locations, profiles, seeds
* ``helpers.data``      -- read the three data layouts, decode images, patient split
* ``helpers.download``  -- cached, size-checked downloads of the public data
* ``helpers.eda``       -- statistics and figures for the EDA notebook
* ``helpers.notebooks`` -- run the numbered notebooks with papermill
"""

__version__ = "0.1.0"
