"""Ways to try the model: the browser page server (`web`), the Gradio app (`gradio_app`), the model files
they run (`models`), and the headless-Chromium driver and benchmark used to check the page (`browser`,
`web_bench`). Importing this package imports nothing heavy (no torch, no gradio)."""
