"""The command-line tools, one module each; `run()` is the command.

  command (pip install -e .)        from a checkout                module
  layermatch-evaluate               python tools/evaluate.py        evaluate.py
  layermatch-probe                  python tools/probe.py           probe.py
  layermatch-plot                   python tools/plot.py            plot.py
  layermatch-predict                python tools/predict.py         predict.py
  layermatch-export                 python tools/export.py          export.py
  layermatch-benchmark              python tools/benchmark.py       benchmark.py
  layermatch-learning-benchmark     python tools/learning_benchmark.py
  layermatch-show-augment           python tools/show_augment.py    show_augment.py
  layermatch-make-example-folder    python tools/make_example_folder.py
  layermatch-prepare-data           python tools/prepare_data.py    prepare_data.py
  layermatch-convert-checkpoint     python tools/convert_checkpoint.py

Each tools/NAME.py is a shim that runs the module's `run()`, so the two forms
take the same arguments and behave alike. Bad input ends with one line
`error: ...` on stderr and exit status 2 (cli_util.run). The configs/ folder
is read from the checkout that holds the package (cli_util.import_configs).
"""
