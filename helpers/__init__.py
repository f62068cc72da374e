"""Pneumonia detection on chest X-rays: the package the notebooks, the web app and the CLIs call.

Importing ``helpers`` itself does nothing heavy; import the module you need.

The serving core, TensorFlow-free (what the web app, ``python -m helpers.screen``, the
archive job, the notebook explorer and the phone exports screen through):

* ``helpers.serving.pipeline`` -- ``Screener``: bytes -> decode -> one engine pass -> guard
  -> decision -> heat map, its ``ScreeningResult``, finding the model, guard and site files
* ``helpers.serving.engine`` -- the engine interface, the LiteRT one-pass engine, the LiteRT runtime
* ``helpers.serving.guard``  -- the out-of-distribution guard of notebook 07, applied
* ``helpers.serving.site``   -- a site calibration of notebook 08, applied
* ``helpers.screening``      -- the pipeline's first address (re-exports ``helpers.serving``)

Pure building blocks under it: ``helpers.config`` (locations, profiles, seeds),
``helpers.errors``, ``helpers.jsonio`` (the one strict JSON writer), ``helpers.provenance``
(which model a fitted file belongs to), ``helpers.imaging``, ``helpers.uploads`` and
``helpers.dicom`` (checked decoding of uploads), ``helpers.escaping``,
``helpers.operating_point`` (the decision rule: threshold, calibration, refer band).

Data, training and evaluation (the notebooks):

* ``helpers.data``       -- read the three data layouts, decode images, patient split
* ``helpers.cache``      -- the on-disk cache of decoded images, activations, features
* ``helpers.download``   -- cached, size- and hash-checked downloads of the public data
* ``helpers.eda``        -- statistics and figures for the EDA notebook (01)
* ``helpers.imbalance``  -- class-imbalance strategies compared on validation (02)
* ``helpers.model``      -- MobileNetV2 + head as one flat graph, 0-255 input
* ``helpers.training``   -- two-phase fine-tuning on cached activations (03);
  ``helpers.activations``: batched prediction and the activation cache it uses
* ``helpers.predict``    -- batched predictions and the predictions CSVs
* ``helpers.evaluation`` -- metrics, bootstrap CIs, threshold, calibration, band (04)
* ``helpers.gradcam``    -- Grad-CAM sanity and faithfulness checks (05);
  ``helpers.gradcam_maps``: the maps and their pictures
* ``helpers.shift``      -- within-class two-sample test: does test look like train? (04)
* ``helpers.tflite``     -- TFLite conversion, parity, metadata (06)
* ``helpers.one_pass``   -- the one-pass phone model and its Keras engine (06, 07)
* ``helpers.quantization_noise`` -- decision flips an int8 logit error predicts (06)
* ``helpers.ood``, ``helpers.guard`` -- fitting the out-of-distribution guard and its gates (07)
* ``helpers.explorer``   -- the prediction explorer's logic, screening through the pipeline (07)
* ``helpers.widgets``    -- the thin ipywidgets layer over ``helpers.explorer`` (07)
* ``helpers.site``       -- a new hospital: the protocol and the site calibration (08);
  ``helpers.site_adaptation`` (shift report, label-free BatchNorm adaptation) and
  ``helpers.site_heads`` (patient draws, the anchored head refit, Platt and class mix)
* ``helpers.notebooks``  -- run the numbered notebooks with papermill; ``helpers.report``,
  ``helpers.targets`` -- the README's generated blocks and the targets they check

Front ends and tools: ``helpers.screen`` (screen a folder), ``helpers.archive`` (an archive
on Dask), ``helpers.phone_export`` / ``helpers.phone_site`` (the phone web app's files),
``helpers.concurrency`` (screens under load), ``helpers.fuzz`` (damaged inputs),
``helpers.ledger`` (each scoring of the test set), ``helpers.augment``, ``helpers.plots``
and ``helpers.evaluation_plots`` (figures).

Imports sit at the top of each module, except TensorFlow/Keras, imported inside the
functions that need them, and the heavy libraries only some functions use (scikit-learn,
SciPy, pandas, Matplotlib, ...), imported where used for a fast cold start.
``tests/test_architecture.py`` checks these rules, the layer order and the serving
contract in ``.importlinter``, that no module passes 700 lines, that no import circle
exists, and that the web app loads at most 15 ``helpers`` modules.
"""

__version__ = "0.1.0"
