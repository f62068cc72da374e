"""Pneumonia detection on chest X-rays: the package the notebooks call.

Modules (import the one you need; importing ``helpers`` itself does nothing heavy):

* ``helpers.config``     -- data / weights / artifacts locations, profiles, seeds
* ``helpers.data``       -- read the three data layouts, decode images, patient split
* ``helpers.cache``      -- the on-disk cache of decoded images, activations, features
* ``helpers.jsonio``     -- the one strict, atomic JSON writer for every artifact
* ``helpers.download``   -- cached, size- and hash-checked downloads of the public data
* ``helpers.eda``        -- statistics and figures for the EDA notebook (01)
* ``helpers.imbalance``  -- class-imbalance strategies compared on validation (02)
* ``helpers.model``      -- MobileNetV2 + head as one flat graph, 0-255 input
* ``helpers.training``   -- two-phase fine-tuning on cached activations (03)
* ``helpers.predict``    -- batched predictions and the predictions CSVs
* ``helpers.operating_point`` -- the decision rule: threshold, calibration, refer band
* ``helpers.evaluation`` -- metrics, bootstrap CIs, threshold, calibration, band (04)
* ``helpers.gradcam``    -- Grad-CAM, sanity and faithfulness checks (05)
* ``helpers.shift``      -- within-class two-sample test: does test look like train? (04)
* ``helpers.tflite``     -- TFLite conversion, interpreter wrapper, parity, metadata (06)
* ``helpers.quantization_noise`` -- decision flips an int8 logit error predicts (06)
* ``helpers.explorer``   -- pure logic of the prediction explorer (07)
* ``helpers.ood``        -- out-of-distribution check for uploaded images (07)
* ``helpers.widgets``    -- the thin ipywidgets layer over ``helpers.explorer`` (07)
* ``helpers.site``       -- a new hospital: shift report, label-free adaptation, site calibration (08)
* ``helpers.notebooks``  -- run the numbered notebooks with papermill

Imports sit at the top of each module, except TensorFlow/Keras, imported inside the
functions that need them: the web app and the CLI (``helpers.screening``) never load
TensorFlow. In the modules they import, scikit-learn, SciPy, pandas and Matplotlib are
imported where used too, for a fast cold start. ``tests/test_architecture.py`` checks both
rules and the layer order in ``.importlinter``.
"""

__version__ = "0.1.0"
